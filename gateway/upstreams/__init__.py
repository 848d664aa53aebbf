"""Model -> pool of vLLM replicas, and how one is picked."""
