"""Talking to the provincial platform: signing, encryption, auth providers and the client."""
