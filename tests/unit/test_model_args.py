"""Unit tests of what the Python-backend models read at load (services/triton_models/model_args.py)."""

from __future__ import annotations

from services.triton_models import views
from services.triton_models.model_args import pipeline_fingerprint


def test_the_pipeline_fingerprint_follows_parameters_not_comments(tmp_path):
    config = tmp_path / "postprocess" / "config.pbtxt"
    config.parent.mkdir()

    def fingerprint(text: str) -> str:
        config.write_text(text)
        return pipeline_fingerprint([config])

    shipped = fingerprint('# views\nparameters { key: "whole_image_views" value { string_value: "4" } }\n'
                          'parameters { key: "max_objects" value { string_value: "28" } }\n')
    # text_format's layout (eval copies of the repository), other comments, another order: same settings
    reordered = ('parameters {\n  key: "max_objects"\n  value {\n    string_value: "28"\n  }\n}\n'
                 '# other words\nparameters { key: "whole_image_views" value { string_value: "4" } }\n')
    assert fingerprint(reordered) == shipped
    assert fingerprint('parameters { key: "whole_image_views" value { string_value: "1" } }\n'
                       'parameters { key: "max_objects" value { string_value: "28" } }\n') != shipped


def test_the_pipeline_fingerprint_follows_the_views_recipe(tmp_path, monkeypatch):
    config = tmp_path / "postprocess" / "config.pbtxt"
    config.parent.mkdir()
    config.write_text('parameters { key: "whole_image_views" value { string_value: "4" } }\n')
    shipped = pipeline_fingerprint([config])
    monkeypatch.setattr(views, "RECIPE", views.RECIPE + 1)
    assert pipeline_fingerprint([config]) != shipped


def test_the_pipeline_fingerprint_follows_the_models_int8_copies(tmp_path):
    """A new INT8 copy (another calibration, quantizer or onnxruntime) re-embeds on the next
    import; a model without one leaves the fingerprint as the configs make it."""
    config = tmp_path / "postprocess" / "config.pbtxt"
    config.parent.mkdir()
    config.write_text('parameters { key: "whole_image_views" value { string_value: "4" } }\n')

    def manifest(role: str, int8: str | None) -> dict:
        return {"role": role, "serving": {"onnx_sha256": "f" * 64, **({"int8": {"onnx_sha256": int8}} if int8 else {})}}

    shipped = pipeline_fingerprint([config], (manifest("detector", "a" * 64), manifest("embedder", "b" * 64)))
    assert pipeline_fingerprint([config], (manifest("detector", "c" * 64), manifest("embedder", "b" * 64))) != shipped
    assert pipeline_fingerprint([config], (manifest("detector", "a" * 64), manifest("embedder", "c" * 64))) != shipped
    assert pipeline_fingerprint([config], (manifest("detector", "a" * 64), manifest("embedder", "b" * 64))) == shipped
    assert pipeline_fingerprint([config], (manifest("detector", None), manifest("embedder", None))) == \
        pipeline_fingerprint([config])
