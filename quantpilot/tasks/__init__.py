"""Task helpers used to measure quantized models: sentence embeddings, image classification.

Example:
    >>> from quantpilot.tasks import sentence_embedding
    >>> callable(sentence_embedding.embed)
    True
"""
