"""BagCAMs as released, in PyTorch: the parity reference of jaxmilab/methods/bagcams.py.

Transcribes zh460045050/BagCAMs libs/cams/basic.py `_BaseWrapper.forward` and
libs/cams/bagcams.py `BagCAMs` (hooks, `backward`, `generate`) without the `.cuda()` calls:

  forward   logits = classifier(avgpool(extractor(image)))
  backward  `self.logits.log().backward(gradient=one_hot)`: torch's log backward is grad / y
            (also where log(y) is NaN, y < 0), so the seed 1/y_k enters at the logits
  hooks     every module of the extractor saves its output (forward) and the gradient at its
            output (backward); every nn.ReLU returns relu(grad_in), i.e. a guided ReLU
  generate  term_2 = G F, term_1 = mean_m(G F + 1), M = sum_c relu(term_1 term_2), bilinear
            upsample (align_corners=False), min-max per image

`extractor` must be an nn.Module whose `named_modules()` contain the target layer (e.g.
"layer3") and whose ReLUs are nn.ReLU modules (a module used several times is hooked on each
use, as in the release). torch is imported lazily.
"""

from __future__ import annotations


class BagCAMs:
  """The released wrapper: `forward(image)`, `backward(ids)`, `generate(target_layer)`."""

  def __init__(self, extractor, classifier):
    import torch  # pylint: disable=g-import-not-at-top

    nn, F = torch.nn, torch.nn.functional
    self.torch = torch
    self.model, self.classifier = extractor, classifier
    self.pool = nn.AdaptiveAvgPool2d(1)
    self.fmap_pool, self.grad_pool, self.handlers = {}, {}, []

    def save_grads(key):
      def backward_hook(module, grad_in, grad_out):
        self.grad_pool[key] = grad_out[0].detach()
        if isinstance(module, nn.ReLU):
          return (F.relu(grad_in[0]),)
        return None

      return backward_hook

    def save_fmaps(key):
      def forward_hook(module, inputs, output):
        self.fmap_pool[key] = output.detach()

      return forward_hook

    for name, module in self.model.named_modules():
      self.handlers.append(module.register_forward_hook(save_fmaps(name)))
      self.handlers.append(module.register_backward_hook(save_grads(name)))

  def forward(self, image):
    self.image_shape = image.shape[2:]
    features = self.pool(self.model(image))
    self.logits = self.classifier(features.flatten(1)).view(features.shape[0], -1)
    return self.logits

  def backward(self, ids):
    one_hot = self.torch.zeros_like(self.logits)
    for i, k in enumerate(ids):
      one_hot[i, int(k)] = 1.0
    self.model.zero_grad()
    self.logits.log().backward(gradient=one_hot, retain_graph=True)

  def generate(self, target_layer: str):
    F = self.torch.nn.functional
    grads, features = self.grad_pool[target_layer], self.fmap_pool[target_layer]
    term_2 = grads * features
    term_1 = F.adaptive_avg_pool2d(term_2 + 1, 1)
    bagcams = self.torch.relu(term_1 * term_2).sum(dim=1, keepdim=True)
    bagcams = F.interpolate(bagcams, self.image_shape, mode="bilinear", align_corners=False)
    b, c, h, w = bagcams.shape
    bagcams = bagcams.view(b, -1)
    bagcams -= bagcams.min(dim=1, keepdim=True)[0]
    bagcams /= bagcams.max(dim=1, keepdim=True)[0]
    return bagcams.view(b, c, h, w)

  def remove_hook(self):
    for handle in self.handlers:
      handle.remove()
