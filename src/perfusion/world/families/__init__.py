"""The families world: categories of things people personalise, each a family of instances that differ in shape,
colour, pattern and accessory, drawn as vector art in scenes with captions that name some of their attributes."""
