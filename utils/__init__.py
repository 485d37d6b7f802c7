"""Small helpers shared by the model family (wan), the rollout (pipeline), the application (app) and media."""
