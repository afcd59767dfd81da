// scale_model_with_regions.cpp — cross-layer scaling over chains and regions together.
//
// Before: a graph with batch norms folded.
// After:  the same function; chain sets (find_cls_sets) and regions (find_cls_regions) equalized.
// Sets and regions share layers (a region's sink starts a chain; a chain's last layer is a
// region's source), so scaling one disturbs the other. Rounds alternate: the sets, iterated to
// their own convergence (options.max_iterations sweeps), then one sweep over the regions; they
// stop when a round moves no scale by |ln s| ≥ tolerance, or after options.max_iterations rounds.
// scale_criterion applies to both: the chains' links read the statistics of their first layers'
// outputs, the regions those of their sources' outputs carried through Adds and Concats
// (scale_cls_regions.cpp). One statistics map is carried through every round's chain and region
// scales, so each sweep reads the outputs as they are.
// A chain decline of a layer that is a source of a region (scaled or declined as a region) is
// replaced by the region's outcome, so every layer has one verdict.
#include <algorithm>
#include <cmath>
#include <unordered_set>

#include "choose_cls_scales.h"
#include "cls_region.h"
#include "gauge_clip_bounds.h"
#include "transaction.h"

namespace prequant {

ClsResult scale_model_with_regions(Graph& graph, const ClsOptions& options, ClsRegionsResult& regions) {
  Transaction tx(graph);
  clamp_clip_bounds(graph);
  ClsCandidates sets = find_cls_sets(graph, options.relu6, options.gated_activations);
  ClsRegionCandidates found = find_cls_regions(graph, options.relu6, options.gated_activations);
  ClsOptions one_sweep = options;
  one_sweep.max_iterations = 1;

  // The statistics both criteria read, as the outputs are now: divided by each round's chain
  // scales (a link's first layer) and region scales (a region's sources).
  ClsOptions chain_options = options;
  auto& statistics = chain_options.output_statistics;
  one_sweep.output_statistics.clear();  // the regions read `statistics`
  ClsResult chains = detail::scale_cls_sets_ungauged(graph, sets.sets, chain_options);
  divide_output_statistics(statistics, chains);
  regions = detail::scale_cls_regions_ungauged(graph, found.regions, one_sweep, &statistics);
  const int rounds = std::max(1, options.max_iterations);
  int round = 1;
  for (; round < rounds && regions.last_max_log_scale >= options.tolerance; ++round) {
    ClsResult again = detail::scale_cls_sets_ungauged(graph, sets.sets, chain_options);
    divide_output_statistics(statistics, again);
    for (size_t k = 0; k < chains.sets.size(); ++k)
      for (size_t p = 0; p < chains.sets[k].pairs.size(); ++p)
        for (size_t c = 0; c < chains.sets[k].pairs[p].scale.size(); ++c)
          chains.sets[k].pairs[p].scale[c] *= again.sets[k].pairs[p].scale[c];
    chains.iterations += again.iterations;
    ClsRegionsResult more = detail::scale_cls_regions_ungauged(graph, found.regions, one_sweep, &statistics);
    for (size_t k = 0; k < regions.regions.size(); ++k)
      for (size_t j = 0; j < regions.regions[k].scale.size(); ++j)
        regions.regions[k].scale[j] *= more.regions[k].scale[j];
    regions.iterations += more.iterations;
    regions.last_max_log_scale = std::max(more.last_max_log_scale, again.last_max_log_scale);
    chains.last_max_log_scale = again.last_max_log_scale;
    chains.converged = again.converged;
  }
  regions.converged = regions.last_max_log_scale < options.tolerance;
  // Once, at the end (gauged in between, the next sweep would undo it): every bound ≤ its clip's
  // clip_max; this also records the clip bounds and gate scales as they ended (later rounds moved
  // them again).
  gauge_clip_bounds(graph, chains, &regions, options);

  std::unordered_set<std::string> in_region;
  for (const auto& r : regions.regions) in_region.insert(r.sources.begin(), r.sources.end());
  for (const auto& d : found.declined) in_region.insert(d.nodes.begin(), d.nodes.end());
  chains.declined.clear();
  for (auto& d : sets.declined)
    if (d.nodes.empty() || !in_region.count(d.nodes[0])) chains.declined.push_back(std::move(d));
  regions.declined = std::move(found.declined);
  tx.commit();
  return chains;
}

}  // namespace prequant
