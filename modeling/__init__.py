"""The model on both sides of the conversion: the training module and the transformers implementation."""
