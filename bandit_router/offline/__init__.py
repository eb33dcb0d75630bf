"""Offline evaluation: the DSJSON export, estimators and off-policy replay."""
