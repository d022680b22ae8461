# docs/model.md §8.1: AdamW 6e-5, wd 0.01, decoder lr ×10, no weight decay on backbone norms,
# poly (power 1) with 1500 linear warm-up iterations, 160k iterations, fp32.
# mmcv picks the first custom key (sorted) that is a substring of a parameter name, so 'head'
# wins over 'norm' for decoder norms, exactly as in the original.
optimizer = dict(
    type='AdamW',
    lr=6e-5,
    betas=(0.9, 0.999),
    weight_decay=0.01,
    paramwise_cfg=dict(custom_keys={
        'pos_block': dict(decay_mult=0.),
        'norm': dict(decay_mult=0.),
        'head': dict(lr_mult=10.),
    }))
optimizer_config = dict()
lr_config = dict(
    policy='poly', power=1.0, min_lr=0.0, by_epoch=False,
    warmup='linear', warmup_iters=1500, warmup_ratio=1e-6)
runner = dict(type='IterBasedRunner', max_iters=160000)
checkpoint_config = dict(by_epoch=False, interval=4000)
evaluation = dict(interval=4000, metric='mIoU', pre_eval=True)
