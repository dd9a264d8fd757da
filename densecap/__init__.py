"""densecap: dense captioning (FCLN), whole-image captioning and region retrieval in PyTorch."""
__version__ = "0.1.0"
