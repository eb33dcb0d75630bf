"""The replay simulator over full-feedback logs."""
