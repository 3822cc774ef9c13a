"""quantpilot's testbed: what the tests, benchmarks and demos measure quantized models on.

Not part of the installable library (``pip install quantpilot`` does not bring it); the Makefile
installs it from the repository with ``pip install -e testbed``. It holds:

- ``digits_cnn``, ``resnet``: small models trained or built for tests and benchmarks;
- ``imagenet_samples``: the 500 ImageNet photographs under ``shared/data`` and top-k accuracy;
- ``language_model``: the WikiText-2 GPT-2 testbed (training, loading, calibration windows,
  ``tiny_causal_lm``); perplexity and KL live in ``quantpilot.metrics`` and are re-exported there;
- ``outlier_injection``: LLM-sized activation outliers for a small decoder;
- ``sentence_embedding``: retrieval agreement, plus the library's ``quantpilot.text`` helpers;
- ``datasets``: the 360 bundled English sentences (200 calibration, 160 held out);
- ``demos``: ``python -m quantpilot_testbed.demos.ptq_minilm`` and ``.calibrators``.

Example:
    >>> from quantpilot_testbed import sentence_embedding
    >>> callable(sentence_embedding.embed)
    True
"""
