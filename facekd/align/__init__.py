"""Face alignment: MTCNN detection and a 5-point similarity warp onto a template."""
