"""VATT models: tokenizers, positional code, DropToken, Transformers, heads, and the assemblies."""
from vatt.model.factory import build_model
from vatt.model.outputs import BackboneOutput, ClassifierOutput, VATTOutput
from vatt.model.vatt import VATT, Classifier, UnifiedVATT

__all__ = ["build_model", "VATT", "UnifiedVATT", "Classifier", "VATTOutput", "BackboneOutput", "ClassifierOutput"]
