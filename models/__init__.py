"""HCD models: ``build_model(cfg)`` wires a resolved config to the model and its criterion."""
from models.backbone import build_backbone
from models.criterion import build_criterion
from models.deformable_transformer import build_deformable_transformer
from models.hcd import HCD
from models.mask_head import HybridMaskHead
from models.object_referring import ObjectReferring
from models.pixel_referring import PixelReferringHead
from models.pretrained import PretrainedComponents, load_pretrained
from models.sentence_queries import SentenceQueries
from models.tcmr import MaskRefiner
from models.text_alignment import TextAlignment
from models.text_encoder import build_text_modules


def build_model(cfg: dict, components: PretrainedComponents | None = None):
    """Build ``(model, criterion)`` from a resolved config.

    components: the pretrained parts; loaded from ``cfg["weights"]`` when omitted (pass
    ``models.pretrained.build_pretrained_on_meta()`` to build the full-size model without weights).
    """
    if components is None:
        components = load_pretrained(cfg["weights"])
    options = cfg["model"]
    backbone = build_backbone(cfg, components)
    text_encoder, query_conditioner, vl_fusion = build_text_modules(
        cfg, components.roberta, components.roberta_tokenizer
    )
    if options["sentence_queries"]:
        query_conditioner = SentenceQueries(options["num_queries"], options["hidden_dim"])
    criterion = build_criterion(cfg)
    mask_head = HybridMaskHead(
        options["hidden_dim"],
        num_levels=len(backbone.num_channels),
        mask_channels=options["dynamic_mask_channels"],  # any width: mixed into the 16 channels of a 4x4 patch
        controller_layers=options["controller_layers"],
        rel_coord=options["rel_coord"],
    )
    model = HCD(
        backbone=backbone,
        text_encoder=text_encoder,
        query_conditioner=query_conditioner,
        transformer=build_deformable_transformer(cfg),
        mask_head=mask_head,
        mask_refiner=MaskRefiner(mask_head.out_channels, backbone.num_channels[0], backbone.stride4_channels),
        num_queries=options["num_queries"],
        num_feature_levels=options["num_feature_levels"],
        aux_loss=options["aux_loss"],
        matcher=criterion.matcher,
        vl_fusion=vl_fusion,
        pixel_referring=PixelReferringHead(options["hidden_dim"]) if options["pixel_referring"] else None,
        text_alignment=TextAlignment(options["hidden_dim"]) if options["text_alignment"] else None,
        object_referring=ObjectReferring(options["hidden_dim"]) if options["object_referring"] else None,
    )
    return model, criterion
