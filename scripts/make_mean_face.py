"""Rebuild src/diffheads/face/data/mean_face.json: the mean face that `prepare` aligns to.

How it is made: MediaPipe Face Mesh (0.10.21, static mode) finds the 468 3-D landmarks of
each input face; the 68-point layout is read off them (diffheads.face.landmarks.MEDIAPIPE_TO_68);
each face is rotated in 3-D (yaw and roll) until it is as left-right symmetric as possible,
projected orthographically, scaled to an outer-eye-corner distance of 1 and centred on the
point under the nose; the faces are averaged and the mean is made exactly symmetric by
averaging it with its mirror image.

Usage: python scripts/make_mean_face.py [IMAGE ...]
With no images it uses the astronaut photo that scikit-image ships (one face: a
frontal portrait). Pass photos of many people for a population mean.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from diffheads.face.mean_face import frontal_mean_face, save_mean_face
from diffheads.face.landmarks import FaceMesh
from diffheads.io.image import read_image


def main(paths: list[str]) -> None:
    """Detect, frontalise, average and write the mean face."""
    if paths:
        images, sources = [read_image(p) for p in paths], [Path(p).name for p in paths]
    else:
        from skimage import data

        images, sources = [data.astronaut()], ["skimage.data.astronaut"]
    meshes = []
    with FaceMesh(video=False, max_faces=1) as mesh:
        for image, source in zip(images, sources):
            faces = mesh(image)
            if len(faces) != 1:
                raise SystemExit(f"{source}: expected one face, found {len(faces)}")
            meshes.append(faces[0])
    mean = frontal_mean_face(np.stack(meshes))
    out = Path(__file__).resolve().parents[1] / "src/diffheads/face/data/mean_face.json"
    save_mean_face(out, mean, sources)
    print(f"wrote {out} from {len(meshes)} face(s)")


if __name__ == "__main__":
    main(sys.argv[1:])
