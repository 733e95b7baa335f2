"""Encoders that turn product images and texts into embedding vectors."""
