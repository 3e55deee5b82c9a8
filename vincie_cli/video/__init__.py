"""Video decoding, shot cuts and clips, frame sampling (the first half of `vincie annotate`).

Heavy imports (av, decord, scenedetect) happen inside functions, so importing this package is cheap.
"""
