"""Rule packs: the shipped default, reading YAML files safely, and publishing."""
