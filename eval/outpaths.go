package eval

import "context"

// OutPaths evaluates the output paths of systems without building them
// (for plan and status). It writes .drv files to the local store, as any
// evaluation of a derivation does, but realises nothing.
func (e *Evaluator) OutPaths(ctx context.Context, inv *Inventory, systems []string) (map[string]Built, error) {
	groups, err := groupByPaths(inv, systems)
	if err != nil {
		return nil, err
	}
	out := map[string]Built{}
	for _, g := range groups {
		res, err := e.instantiate(ctx, includeFlags(inv.Systems[g[0]].Paths), g)
		if err != nil {
			return out, err
		}
		for s, b := range res {
			// Where a build would put it, for plans that only evaluate.
			b.On = inv.BuildHostOf(s)
			out[s] = b
		}
	}
	return out, nil
}
