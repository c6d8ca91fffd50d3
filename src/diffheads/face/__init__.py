"""Face landmarks (MediaPipe Face Mesh), alignment to a mean face, and paste-back."""
