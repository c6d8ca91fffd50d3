"""Synthetic talking faces: speech-like audio, cartoon faces driven by it, and a dataset writer."""

from diffheads.synth.dataset import make_held_out_clips, make_synthetic_dataset
from diffheads.synth.face import FaceIdentity, render_face, render_faces, sample_identity
from diffheads.synth.speech import Speech, Voice, sample_voice, synth_speech

__all__ = [
    "FaceIdentity",
    "Speech",
    "Voice",
    "make_held_out_clips",
    "make_synthetic_dataset",
    "render_face",
    "render_faces",
    "sample_identity",
    "sample_voice",
    "synth_speech",
]
