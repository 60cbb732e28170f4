"""Face alignment: a registered detector (MTCNN, YuNet) and a 5-point similarity warp onto a template."""
