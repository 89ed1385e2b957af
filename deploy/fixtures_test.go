package deploy

import (
	"github.com/nix-hive/nix-hive/eval"
)

func seedInventory() *eval.Inventory {
	in := func(name, system, store string) *eval.Instance {
		return &eval.Instance{Name: name, System: system, Store: store, User: "root", Port: 22, Host: name}
	}
	return &eval.Inventory{Instances: map[string]*eval.Instance{
		"portico": in("portico", "portico", ""),
		"storage": in("storage", "storage", ""),
		"www-1":   in("www-1", "www", "portico"),
		"www-2":   in("www-2", "www", "portico"),
		"www-3":   in("www-3", "www", "portico"),
		"cdn-1":   in("cdn-1", "www", "https://cache.example"),
		"cdn-2":   in("cdn-2", "www", "https://cache.example"),
	}}
}

var seedBuilt = map[string]eval.Built{
	"portico": {OutPath: "/nix/store/p"}, "storage": {OutPath: "/nix/store/s"}, "www": {OutPath: "/nix/store/w"},
}
