"""The model store: the manifest and search path, downloads, synthetic stand-ins, conversions."""
