package eval

import "context"

// OutPaths evaluates the output paths of systems without building them
// (for plan and status). It writes .drv files to the local store, as any
// evaluation of a derivation does, but realises nothing.
func (e *Evaluator) OutPaths(ctx context.Context, inv *Inventory, systems []string) (map[string]Built, error) {
	groups := map[string][]string{}
	var keys []string
	for _, s := range systems {
		k := pathsKey(inv.Systems[s].Paths)
		if _, ok := groups[k]; !ok {
			keys = append(keys, k)
		}
		groups[k] = append(groups[k], s)
	}
	out := map[string]Built{}
	for _, k := range keys {
		g := groups[k]
		res, err := e.instantiate(ctx, includeFlags(inv.Systems[g[0]].Paths), g)
		if err != nil {
			return out, err
		}
		for s, b := range res {
			out[s] = b
		}
	}
	return out, nil
}
