"""The run configuration: YAML validated by pydantic, with one-line errors naming the key path.

``schema`` holds the models (``RunConfig`` and its parts); ``loader`` reads and validates
YAML files and dicts against them, given the stage types that may appear.
"""
