"""An OpenAI-compatible HTTP API over the VisionLanguage and Diffusion gRPC services."""
