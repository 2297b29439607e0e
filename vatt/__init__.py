"""VATT: Video-Audio-Text Transformer (Akbari et al., NeurIPS 2021) in PyTorch."""
__version__ = "0.1.0"
