# SegMAN-T trained from scratch on the procedural "toy shapes" set (tools/make_toy_dataset.py):
# a CPU-sized demo of the full pipeline and a worked example of a custom dataset: the classes
# and palette are declared here, and mmseg's CustomDataset reads the ADE20K-style folders.
_base_ = ['./segman_t_ade.py']
classes = ('background', 'disk', 'ring', 'stripes', 'checker')
palette = [[120, 120, 120], [230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48]]
data_root = 'data/toy_shapes'
crop_size = (224, 224)  # SegMAN needs >= 224 px (a 7×7 window at 1/32)
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='Resize', img_scale=(256, 256), ratio_range=(0.875, 1.25)),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='Normalize', **img_norm_cfg),
    dict(type='Pad', size=crop_size, pad_val=0, seg_pad_val=255),
    dict(type='DefaultFormatBundle'),
    dict(type='Collect', keys=['img', 'gt_semantic_seg']),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='MultiScaleFlipAug',
        img_scale=(256, 256),
        flip=False,
        transforms=[
            dict(type='AlignedResize', keep_ratio=True, size_divisor=32, min_side=224),
            dict(type='RandomFlip'),
            dict(type='Normalize', **img_norm_cfg),
            dict(type='ImageToTensor', keys=['img']),
            dict(type='Collect', keys=['img']),
        ])
]
toy = dict(type='CustomDataset', data_root=data_root, classes=classes, palette=palette,
           img_suffix='.jpg', seg_map_suffix='.png', reduce_zero_label=True)
model = dict(
    backbone=dict(pretrained=None),
    decode_head=dict(num_classes=len(classes), norm_cfg=dict(type='BN', requires_grad=True)))
data = dict(
    samples_per_gpu=8,
    workers_per_gpu=1,
    train=dict(_delete_=True, **toy, img_dir='images/training', ann_dir='annotations/training',
               pipeline=train_pipeline),
    val=dict(_delete_=True, **toy, img_dir='images/validation', ann_dir='annotations/validation',
             pipeline=test_pipeline),
    test=dict(_delete_=True, **toy, img_dir='images/validation', ann_dir='annotations/validation',
              pipeline=test_pipeline))
# From scratch: a larger learning rate than fine-tuning, one rate for all parameters, a short
# warm-up and gradient clipping (without it the loss diverged after ~100 iterations at 2e-3).
optimizer = dict(lr=1e-3, paramwise_cfg=dict(custom_keys={'head': dict(lr_mult=1.)}))
optimizer_config = dict(grad_clip=dict(max_norm=1.0, norm_type=2))
# 330 iterations of 8 crops take about 9.5 minutes on 2 CPU cores.
lr_config = dict(warmup_iters=40)
runner = dict(max_iters=330)
checkpoint_config = dict(interval=110, max_keep_ckpts=2)
evaluation = dict(interval=330, save_best='mIoU')
log_config = dict(interval=10)
