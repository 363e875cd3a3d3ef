"""Small helpers shared by the core and the Detectron2 layer."""
