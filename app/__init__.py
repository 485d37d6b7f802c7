"""The command-line application: config, settings, prompts and schedules, outputs and resume, the runner."""
