"""The .edit grammar, shipped as package data."""
