"""A small demo catalog made from the real photos in ``sample_photos`` (quick start and tests)."""

from __future__ import annotations

from services.api import pb
from tools.sample_photos import Photo, encode

# product id -> (photos (image id, photo name), category, price, attributes, title)
CATALOG = {
    "mug-001": ([("main", "coffee")], "kitchen", 12.5, {"color": "white"}, "Cappuccino cup with saucer"),
    "moto-001": ([("left", "motorcycle_left"), ("right", "motorcycle_right")], "vehicles", 8999.0,
                 {"color": "red"}, "Sport motorcycle"),
    "cat-001": ([("main", "cat")], "pets", 20.0, {"color": "orange"}, "Tabby cat poster"),
    "suit-001": ([("main", "astronaut")], "apparel", 150.0, {"color": "white"}, "Astronaut costume"),
    "rocket-001": ([("main", "rocket")], "toys", 30.0, {"color": "white"}, "Rocket launch print"),
    "vase-001": ([("main", "flower")], "home", 45.0, {"color": "pink"}, "Flower still life"),
    "temple-001": ([("main", "china")], "posters", 15.0, {"color": "green"}, "Temple poster"),
}


def product_for(photo_name: str) -> str:
    return next(pid for pid, (images, *_rest) in CATALOG.items() if any(n == photo_name for _, n in images))


def import_requests(photos: dict[str, Photo]) -> list[pb.ImportProductsRequest]:
    requests = []
    for pid, (images, category, price, attributes, title) in CATALOG.items():
        requests.append(pb.ImportProductsRequest(
            product=pb.Product(product_id=pid, category=category, price=price, attributes=attributes, title=title),
            images=[pb.ProductImage(image_id=image_id, content=encode(photos[name].pixels))
                    for image_id, name in images]))
    return requests
