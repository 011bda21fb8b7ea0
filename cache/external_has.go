package cache

import "github.com/ctsyncd/ctsyncd/flow"

// Has tells whether origin has an entry for k, without copying it.
func (c *External) Has(origin string, k flow.Key) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	i, ok := c.byName[origin]
	if !ok {
		return false
	}
	_, ok = c.origins[i].flows.get(k)
	return ok
}
