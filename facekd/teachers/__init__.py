"""Ready teachers that are not facekd backbones (dlib's ResNet), the crops each teacher
cuts from a photo with its own geometry, and the optional packages they come from."""
