"""Using trained tasks: batched transcription (and the engine and server built on it)."""
