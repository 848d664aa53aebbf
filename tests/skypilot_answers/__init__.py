"""SkyPilot's answers: recorded ones (JSON), and a probe that asks the real SDK."""
