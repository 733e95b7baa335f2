"""The boosted fusion head: gradient-boosted trees on attributes and supervised embedding projections.

Modules: `config` (typed settings), `projections` (ridge and kNN features of an embedding),
`features` (the fused feature matrix), `members` (LightGBM and CatBoost), `model`
(BoostedFusionModel), `checkpoint` (saving and loading) and `predictor` (BoostedPredictor).
None of them imports torch.
"""
