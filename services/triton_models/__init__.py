"""Code of the Triton Python-backend models (``model_repository/*/1/model.py``).

Ships in the Triton image; the in-process reference pipeline (``tools/models``) imports the
same ``imaging`` module, so both run identical image code. Needs only numpy, Pillow and
(for ``onnx_runner``) onnxruntime.
"""
