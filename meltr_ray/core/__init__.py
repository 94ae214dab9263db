"""The maths and the loop, with no Ray, no backbones and no data: MELTR and its baseline combiners
(:mod:`.meltr`), hypergradients (:mod:`.hypergrad`), the bilevel step (:mod:`.bilevel`), the loop
(:mod:`.loop`), checkpoints (:mod:`.checkpoint`) and the distributed helpers (:mod:`.distributed`)."""
