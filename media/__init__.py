"""Media I/O: video frames from decoded latents, the streaming mp4 writer."""
