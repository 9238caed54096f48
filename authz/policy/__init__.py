"""Policies as data: files -> resources -> validated, immutable models (with the
file and line of every field). Loads, validates and models; imports no engine."""
