"""Paths of the data contract: DATA/video, DATA/audio, DATA/lmks, file lists, EMB (SPEC)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from diffheads.errors import DiffheadsError

SPLITS = ("train", "test")


def clip_id(line: str) -> str:
    """'./s15/1015_DFA_ANG_XX.mp4' -> 's15/1015_DFA_ANG_XX' (file-list entry to clip id)."""
    text = line.strip()
    if text.startswith("./"):
        text = text[2:]
    return str(Path(text).with_suffix(""))


@dataclass(frozen=True)
class DataLayout:
    """Where each file of a clip lives."""

    root: Path
    embeddings: Path

    @classmethod
    def of(cls, root: str | Path, embeddings: str | Path | None = None) -> DataLayout:
        """Layout rooted at DATA with embeddings in EMB (default DATA/emb)."""
        root = Path(root)
        return cls(root, Path(embeddings) if embeddings else root / "emb")

    def file_list(self, split: str) -> Path:
        """DATA/file_list_<split>.txt."""
        return self.root / f"file_list_{split}.txt"

    def clips(self, split: str) -> list[str]:
        """Clip ids listed for a split (the validation split reads the train list)."""
        path = self.file_list("train" if split == "val" else split)
        if not path.is_file():
            raise DiffheadsError(
                f"file list {path} not found; DATA must hold file_list_train.txt and file_list_test.txt "
                "(make one with 'diffheads synth' or 'diffheads prepare')"
            )
        ids = [clip_id(line) for line in path.read_text().splitlines() if line.strip()]
        if not ids:
            raise DiffheadsError(f"file list {path} is empty; list one clip path per line, e.g. ./s15/clip.mp4")
        return ids

    def video(self, cid: str) -> Path:
        """DATA/video/<id>.mp4."""
        return self.root / "video" / f"{cid}.mp4"

    def audio(self, cid: str) -> Path:
        """DATA/audio/<id>.wav."""
        return self.root / "audio" / f"{cid}.wav"

    def landmarks(self, cid: str) -> Path:
        """DATA/lmks/<id>.npy."""
        return self.root / "lmks" / f"{cid}.npy"

    def alignment(self, cid: str) -> Path:
        """DATA/align/<id>.npy: (T, 2, 3) affine maps from source-video to crop pixels (written by prepare)."""
        return self.root / "align" / f"{cid}.npy"

    def truth(self, cid: str) -> Path:
        """DATA/truth/<id>.npz (synthetic data only)."""
        return self.root / "truth" / f"{cid}.npz"

    def embedding(self, cid: str) -> Path:
        """EMB/<id>.pth."""
        return self.embeddings / f"{cid}.pth"

    @property
    def encoder_file(self) -> Path:
        """EMB/encoder.json: how the embeddings were made, including their width."""
        return self.embeddings / "encoder.json"
