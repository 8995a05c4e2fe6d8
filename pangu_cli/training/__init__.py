"""Training data and recipes for pangu-mini, the small embedded default model.

`scenes` samples and renders the synthetic bilingual scene world (shapes, colours, positions, sizes,
relations, four styles, any aspect ratio); `captions` writes English, Chinese and code-switched captions
for those scenes. Neither imports MindSpore: data generation runs on plain NumPy + Pillow.
"""
