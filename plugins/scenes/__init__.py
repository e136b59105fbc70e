"""The scenes world: compositional 32x32 scenes, an SD-class pipeline, a tiny CLIP reward and a judge."""
