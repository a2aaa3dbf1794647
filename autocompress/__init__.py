"""autocompress: one search over architecture, mixed-precision bits and pruning ratios.

Importing the package stays light: heavy optional dependencies (onnxruntime, ray, torchvision)
are imported where the feature that needs them is used.
"""

__version__ = "0.1.0"
