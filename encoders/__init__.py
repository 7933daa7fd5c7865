"""Modality encoders (vision, audio, video) behind one small interface; built by name via mmadapt.registry."""
