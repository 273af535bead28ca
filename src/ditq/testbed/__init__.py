"""The digits testbed: the bundled demo DiT's training, the digits classifier and the image scorer."""
