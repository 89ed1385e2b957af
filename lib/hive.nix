# nix-hive's Nix library: normalizes a hive definition into an inventory
# (cheap to evaluate: names, addresses, tags, stores, system names) plus one
# lazily evaluated toplevel per system. The nix-hive binary embeds this file,
# so hive.nix users need no NIX_PATH; flake users get it as lib.mkHive.
#
# Evaluating `inventory` must never force a system's toplevel: a fleet of
# thousands of instances sharing five systems evaluates five toplevels, and
# only when they are built.
let
  inherit (builtins)
    attrNames attrValues concatMap concatStringsSep elem filter foldl'
    functionArgs genList groupBy hasAttr head intersectAttrs isAttrs isBool
    isFunction isInt isList isPath isString length listToAttrs mapAttrs
    match removeAttrs sort tail toJSON typeOf;

  # A few helpers handed to `hive.nix` when it is a function taking { lib }.
  # nixpkgs' lib is not assumed to be reachable.
  helpers = rec {
    inherit mapAttrs listToAttrs attrNames attrValues filter concatMap;
    inherit (import ./import.nix) fromTerraform fromPulumi mergeInstances;
    range = first: last: if first > last then [ ] else genList (n: first + n) (last - first + 1);
    nameValuePair = name: value: { inherit name value; };
    genAttrs = names: f: listToAttrs (map (n: nameValuePair n (f n)) names);
    optional = cond: x: if cond then [ x ] else [ ];
    fixedWidth = width: n:
      let s = toString n; pad = width - builtins.stringLength s;
      in if pad <= 0 then s else concatStringsSep "" (genList (_: "0") pad) + s;
  };

  isURL = s: isString s && match "[a-z][a-z0-9+.-]*://.*" s != null;

  # ---- did you mean --------------------------------------------------
  # Only ever computed for a name that is already wrong, so a quadratic
  # edit distance over short names costs nothing in a valid hive.
  lower = builtins.replaceStrings
    (builtins.filter isString (builtins.split "" "ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    (builtins.filter isString (builtins.split "" "abcdefghijklmnopqrstuvwxyz"));
  chars = s: genList (i: builtins.substring i 1 s) (builtins.stringLength s);
  min3 = a: b: c: if a < b then (if a < c then a else c) else (if b < c then b else c);
  # Optimal string alignment: a swap of neighbouring letters ("prot" for
  # "port") is one edit, as in internal/spelling.
  editDistance = a: b:
    let
      as = chars (lower a); bs = chars (lower b); lb = length bs;
      at = builtins.elemAt;
      step = st: ca:
        let
          i = st.i + 1;
          row = foldl' (row: j:
            let
              best = min3 (at st.p j + 1) (at row (j - 1) + 1)
                (at st.p (j - 1) + (if ca == at bs (j - 1) then 0 else 1));
              swap = i > 1 && j > 1 && ca == at bs (j - 2) && st.c == at bs (j - 1);
            in row ++ [ (if swap && at st.pp (j - 2) + 1 < best then at st.pp (j - 2) + 1 else best) ]
          ) [ i ] (genList (j: j + 1) lb);
        in { inherit i; pp = st.p; p = row; c = ca; };
      start = { i = 0; pp = [ ]; p = genList (j: j) (lb + 1); c = null; };
    in at (foldl' step start as).p lb;
  # The candidate nearest to word, if near enough to be a typo (at most a
  # third of its length, at least one edit), else null; one or two letters
  # are too short to guess from.
  closest = word: candidates:
    if builtins.stringLength word < 3 then null else
    let
      limit = let t = builtins.stringLength word / 3; in if t < 1 then 1 else t;
      scored = map (c: { inherit c; d = editDistance word c; }) candidates;
      best = foldl' (acc: x: if x.d <= limit && (acc == null || x.d < acc.d) then x else acc) null scored;
    in if best == null then null else best.c;
  # "; did you mean X?" for an unknown name, else the known ones.
  unknownHint = word: known:
    let c = closest word known; in
    if c != null then "; did you mean ${c}?" else " (known: ${concatStringsSep ", " known})";
  # The same for a reference to a name (quoted), with no list when the
  # known names could be thousands.
  refHint = word: known:
    let c = closest word known; in
    if c != null then "; did you mean \"${c}\"?" else "";

  # Describe a value's type the way an error message should.
  describe = v: if isString v then "a string" else if isInt v then "an integer"
    else if isBool v then "a boolean"
    else if isList v then (let odd = filter (x: !isString x) v; in
      if odd == [ ] then "a list" else "a list containing ${describe (head odd)}")
    else if isAttrs v then "an attribute set" else if isPath v then "a path"
    else if isFunction v then "a function" else typeOf v;

  # check: one validation rule; returns a list of messages (empty = fine).
  expect = where: attr: pred: what: v:
    if pred v then [ ] else [ "${where}: attribute ${attr}: expected ${what}, got ${describe v}" ];

  isStringList = v: isList v && builtins.all isString v;
  isScalar = v: isString v || isInt v || isBool v;
  isSSHOpts = v: isAttrs v && builtins.all isScalar (attrValues v);

  normalizeHostKeys = v: if v == null then [ ] else if isList v then v else [ v ];

  # Turn a path into a string without copying it into the store: a secret key
  # given as ./keys/hive.sec must never become a store path.
  pathString = v: if isPath v then toString v else v;

  mkHive = hiveArg:
    let
      raw = if isFunction hiveArg
        then hiveArg (intersectAttrs (functionArgs hiveArg) { lib = helpers; })
        else hiveArg;
      hive = raw;
      defaults = hive.defaults or { };
      systemsIn = hive.systems or { };
      instancesIn = hive.instances or { };
      hivePaths = hive.paths or { };
      signing = hive.signing or { };

      knownTopAttrs = [ "defaults" "systems" "instances" "paths" "signing" "nix" "nixpkgs" "hostCA" ];
      knownSigningAttrs = [ "keyFile" "publicKey" "publicKeyFile" ];
      unknownIn = where: known: set:
        if !isAttrs set then [ ] else
        map (a: "${where}: unknown attribute ${a}${unknownHint a known}") (filter (a: !elem a known) (attrNames set));

      topErrors =
        unknownIn "hive" knownTopAttrs hive
        ++ unknownIn "signing" knownSigningAttrs signing
        ++ unknownIn "nix" [ "build" ] (hive.nix or { })
        ++ (if isAttrs (hive.nix or null) then unknownIn "nix.build" [ "flags" "host" ] (hive.nix.build or { }) else [ ])
        ++ (if (hive.nix.build.host or null) != null then refErrors "hive" "nix.build.host" hive.nix.build.host false else [ ])
        ++ expect "hive" "systems" isAttrs "an attribute set of systems" systemsIn
        # Said once here, not once per instance that names a system.
        ++ (if systemsOK && systemsIn == { } && instancesIn != { } then [ "hive: attribute systems: no system is defined, and every instance needs one" ] else [ ])
        ++ expect "hive" "instances" isAttrs "an attribute set of instances" instancesIn
        ++ expect "hive" "defaults" isAttrs "an attribute set" defaults
        ++ expect "hive" "paths" isAttrs "an attribute set" hivePaths
        ++ expect "hive" "signing" isAttrs "an attribute set" signing
        ++ (if signing ? keyFile then expect "hive" "signing.keyFile" (v: isString v || isPath v) "a file name (string)" signing.keyFile else [ ])
        ++ (if signing ? publicKey then expect "hive" "signing.publicKey" isString "a string" signing.publicKey else [ ])
        ++ (if signing ? publicKeyFile then expect "hive" "signing.publicKeyFile" (v: isString v || isPath v) "a file" signing.publicKeyFile else [ ])
        ++ expect "hive" "nix.build.flags" isStringList "a list of strings" (hive.nix.build.flags or [ ])
        ++ (if hive ? hostCA && hive.hostCA != null then expect "hive" "hostCA" (v: isString v || isStringList v) "a CA public key line (string) or a list of them" hive.hostCA else [ ]);

      knownSystemAttrs = [ "modules" "configuration" "toplevel" "system" "paths" "nixpkgs" "specialArgs" "meta" "keys" "profiles" "build" ];
      knownInstanceAttrs = [ "system" "host" "user" "port" "jump" "store" "storeUser" "tags" "hostKey" "ssh" "meta" "keys" "specialisation" ];

      # ---- keys ----------------------------------------------------------
      # A key's value comes from exactly one source; its value is never part
      # of the inventory (only evaluated, on its own, when it is uploaded).
      keySources = [ "text" "file" "command" ];
      knownKeyAttrs = keySources ++ [ "dest" "user" "group" "mode" "upload" "timeout" ];
      # A command's time limit, as Go reads durations: "30s", "5m", "1h30m".
      isTimeout = v: isString v && match "([0-9]+[hms])+" v != null && match "(0+[hms])+" v == null;
      keyErrors = where: name: k:
        let w = "${where}: key \"${name}\""; given = filter (a: k ? ${a}) keySources; in
        if !isAttrs k then [ "${w}: expected an attribute set with one of text, file or command, got ${describe k}" ] else
          (if match "[A-Za-z0-9_][A-Za-z0-9._-]*" name == null then [ "${w}: the name may hold letters, digits and . _ - (it names /run/keys/<name> and <name>-key.service)" ] else [ ])
          ++ unknownIn w knownKeyAttrs k
          ++ (if given == [ ] then [ "${w}: needs one of text, file or command" ]
              else if length given > 1 then [ "${w}: give only one of ${concatStringsSep ", " given}" ] else [ ])
          ++ (if k ? text then expect w "text" isString "a string" k.text else [ ])
          ++ (if k ? file then expect w "file" (v: isString v || isPath v) "a file name on this machine (string)" k.file else [ ])
          ++ (if k ? command then expect w "command" (v: isString v || (isStringList v && v != [ ])) "a command line (string) or an argv list" k.command else [ ])
          ++ (if k ? dest then expect w "dest" (v: isString v && match "/.*[^/]" v != null) "an absolute file name" k.dest else [ ])
          ++ (if k ? user then expect w "user" isString "a user name (string)" k.user else [ ])
          ++ (if k ? group then expect w "group" isString "a group name (string)" k.group else [ ])
          ++ (if k ? mode then expect w "mode" (v: isString v && match "0?[0-7]{3}" v != null) "an octal mode string such as \"0400\"" k.mode else [ ])
          ++ (if k ? upload then expect w "upload" (v: elem v [ "pre-activation" "post-activation" ]) "\"pre-activation\" or \"post-activation\"" k.upload else [ ])
          ++ (if !(k ? timeout) then [ ]
              else if !(k ? command) then [ "${w}: attribute timeout: only a command key has one (a text or file is read without running anything)" ]
              else expect w "timeout" isTimeout "a duration such as \"30s\", \"5m\" or \"1h30m\"" k.timeout);
      keysErrors = where: ks:
        if !isAttrs ks then [ "${where}: attribute keys: expected an attribute set of keys, got ${describe ks}" ]
        else concatMap (n: keyErrors where n ks.${n}) (attrNames ks);

      # Keys of an instance: defaults', then its system's, then its own; a
      # key of the same name replaces the earlier one whole.
      keysOf = name: i:
        let
          pick = v: if isAttrs v then v else { };
          sys = if isString (i.system or null) && systemsOK && isAttrs (systemsIn.${i.system} or null) then systemsIn.${i.system}.keys or { } else { };
        in filter' isAttrs (pick (defaults.keys or { }) // pick sys // pick (instancesIn.${name}.keys or { }));

      # What the inventory says of a key: where it comes from and where it
      # goes, never its value. A command string runs with /bin/sh.
      keyInfo = name: k: {
        inherit name;
        source = head (filter (a: k ? ${a}) keySources ++ [ null ]);
        file = if k ? file then pathString k.file else null;
        command = if !(k ? command) then null else if isString k.command then [ "/bin/sh" "-c" k.command ] else k.command;
        dest = typed isString "/run/keys/${name}" (k.dest or "/run/keys/${name}");
        user = typed isString "root" (k.user or "root");
        group = typed isString "root" (k.group or "root");
        mode = typed isString "0400" (k.mode or "0400");
        upload = typed (v: elem v [ "pre-activation" "post-activation" ]) "pre-activation" (k.upload or "pre-activation");
        timeout = typed isTimeout null (k.timeout or null);
      };

      # ---- systems -------------------------------------------------------
      systemErrors = name: s:
        let where = "system \"${name}\""; kinds = filter (k: s ? ${k}) [ "modules" "configuration" "toplevel" ];
        in if !isAttrs s then [ "${where}: expected an attribute set, got ${describe s}" ] else
          unknownIn where knownSystemAttrs s
          ++ (if kinds == [ ] then [ "${where}: needs one of modules, configuration or toplevel" ]
              else if length kinds > 1 then [ "${where}: give only one of ${concatStringsSep ", " kinds}" ] else [ ])
          ++ (if s ? modules then expect where "modules" isList "a list of NixOS modules" s.modules else [ ])
          ++ (if s ? system then expect where "system" isString "a platform string such as \"x86_64-linux\"" s.system else [ ])
          ++ (if s ? paths then expect where "paths" isAttrs "an attribute set" s.paths else [ ])
          ++ (if s ? keys then keysErrors where s.keys else [ ])
          ++ (if s ? profiles then profilesErrors where s.profiles else [ ])
          ++ (if !(s ? build) then [ ] else if !isAttrs s.build then expect where "build" isAttrs "an attribute set ({ host = \"builder\"; })" s.build
              else unknownIn "${where}: build" [ "host" ] s.build ++ refErrors where "build.host" (s.build.host or null) false);

      # ---- profiles ------------------------------------------------------
      # Profiles beside the system one (deploy-rs's), such as a user's
      # home-manager generation: the path is only evaluated when the
      # system is built; its name, user and activation command are checked
      # here, since they reach the host's activation job.
      knownProfileAttrs = [ "path" "user" "activate" ];
      # Their contents are checked by nix-hive (eval/check.go), as an
      # instance's host and user are.
      profileErrors = where: name: p:
        let w = "${where}: profile \"${name}\""; in
        if !isAttrs p then [ "${w}: expected an attribute set with path and user, got ${describe p}" ] else
          unknownIn w knownProfileAttrs p
          ++ (if !(p ? path) then [ "${w}: attribute path: missing (the profile's package, such as home-manager's activationPackage)" ] else [ ])
          ++ (if !(p ? user) then [ "${w}: attribute user: missing (the user it belongs to, who runs its activation)" ]
              else expect w "user" isString "a user name (string)" p.user)
          ++ (if p ? activate then expect w "activate" isString "a command inside the profile (string), such as \"activate\"" p.activate else [ ]);
      profilesErrors = where: ps:
        if !isAttrs ps then [ "${where}: attribute profiles: expected an attribute set of profiles, got ${describe ps}" ]
        else concatMap (n: profileErrors where n ps.${n}) (attrNames ps);
      profilesOf = s: filter' isAttrs (typed isAttrs { } (s.profiles or { }));

      systemPaths = s: hivePaths // (s.paths or { });

      # nixpkgs for a modules/configuration system: the system's own, then the
      # hive's, then <nixpkgs>. Per-system settings win over hive-wide ones.
      nixpkgsFor = name: s: let p = systemPaths s; in
        s.nixpkgs or hive.nixpkgs or (if p ? nixpkgs then p.nixpkgs
          else if nixpkgsOnPath then <nixpkgs>
          else throw "system \"${name}\": its modules need nixpkgs, and none is set: add paths.nixpkgs = \"/path/to/nixpkgs\"; to the hive (or to the system), or nixpkgs = <a nixpkgs flake or path>;, or put nixpkgs on NIX_PATH");
      # Looked up by hand: a missing <nixpkgs> is an error no tryEval
      # catches, and its message says nothing of where nix-hive takes it.
      nixpkgsOnPath = builtins.any (e: e.prefix == "nixpkgs"
        || e.prefix == "" && builtins.pathExists (e.path + "/nixpkgs")) builtins.nixPath;

      # A ready toplevel's platform is not read from the derivation: that would
      # force its evaluation just to list the inventory.
      platformOf = s: s.system or (if s ? toplevel then null else "x86_64-linux");

      toplevelOf = name: s: if s ? toplevel then s.toplevel else (evaluatedOf name s).config.system.build.toplevel;

      evaluatedOf = name: s:
        let
          nixpkgs = nixpkgsFor name s;
          modules = (if s ? modules then s.modules else [ s.configuration ]) ++ [ (hiveModule name) ];
          args = { system = platformOf s; inherit modules; specialArgs = { hiveSystem = name; } // (s.specialArgs or { }); };
        in if isAttrs nixpkgs && nixpkgs ? lib && nixpkgs.lib ? nixosSystem
          then nixpkgs.lib.nixosSystem args
          else import "${toString nixpkgs}/nixos/lib/eval-config.nix" args;

      # The configuration `nix-hive eval --attr` reads: a modules system's
      # NixOS config; a toplevel system has only its toplevel.
      configOf = name: s:
        if s ? toplevel then { system.build.toplevel = s.toplevel; }
        else (evaluatedOf name s).config;

      systemsOK = isAttrs systemsIn;
      systems = if systemsOK then mapAttrs (name: s: {
        inherit name;
        platform = if isAttrs s then platformOf s else null;
        kind = if !isAttrs s then null else if s ? toplevel then "toplevel" else if s ? modules then "modules" else "configuration";
        paths = if isAttrs s then mapAttrs (_: pathString) (systemPaths s) else { };
        meta = if isAttrs s then s.meta or { } else { };
        buildHost = if isAttrs s && isString ((s.build or null).host or null) then s.build.host else null;
        profiles = if isAttrs s then mapAttrs (_: p: {
          user = typed isString "root" (p.user or "root");
          activate = typed isString "activate" (p.activate or "activate");
        }) (profilesOf s) else { };
      }) systemsIn else { };

      # ---- instances -----------------------------------------------------
      instancesOK = isAttrs instancesIn && isAttrs defaults;
      merged = if instancesOK then mapAttrs (name: i: if isAttrs i then defaults // i else i) instancesIn else { };

      # What an instance says itself is checked for each instance; what
      # it inherits from defaults is checked once, as defaults.
      attrErrors = where: i:
          unknownIn where knownInstanceAttrs i
          ++ (if i ? host then expect where "host" (h: isString h || (isStringList h && h != [ ])) "an address or host name (string), or a non-empty list of them tried in order" i.host else [ ])
          ++ (if i ? user then expect where "user" isString "a user name (string)" i.user else [ ])
          ++ (if i ? storeUser then expect where "storeUser" isString "a user name (string)" i.storeUser else [ ])
          ++ (if i ? port then expect where "port" (p: isInt p && p > 0 && p < 65536) "a port number (1-65535)" i.port else [ ])
          ++ (if i ? tags then expect where "tags" isStringList "a list of strings" i.tags else [ ])
          ++ (if i ? specialisation && i.specialisation != null then expect where "specialisation" isString "a specialisation name (string)" i.specialisation else [ ])
          ++ (if i ? ssh then expect where "ssh" isSSHOpts "an attribute set of OpenSSH options (strings or numbers)" i.ssh else [ ])
          ++ (if i ? meta then expect where "meta" isAttrs "an attribute set" i.meta else [ ])
          ++ (if i ? hostKey && i.hostKey != null then expect where "hostKey" (v: isString v || isStringList v) "a public key line (string) or a list of them" i.hostKey else [ ])
          ++ (if i ? system then systemRefErrors where i.system else [ ])
          ++ refErrors where "jump" (i.jump or null) false
          ++ refErrors where "store" (i.store or null) true;

      systemRefErrors = where: v:
        if !isString v then expect where "system" isString "a system name (string)" v
        # No usable systems at all is said once, at the hive's level.
        else if !systemsOK || systemsIn == { } then [ ]
        else if !(systemsIn ? ${v}) then
          [ "${where}: attribute system: unknown system \"${v}\"${
            let known = attrNames systemsIn; c = closest v known; in
            if c != null then "; did you mean \"${c}\"?" else " (known: ${concatStringsSep ", " known})"}" ]
        else [ ];

      defaultsErrors = if isAttrs defaults then attrErrors "defaults" (removeAttrs defaults [ "keys" ]) else [ ];

      instanceErrors = name: i:
        let where = "instance \"${name}\""; own = instancesIn.${name}; in
        if !isAttrs own then [ "${where}: expected an attribute set, got ${describe own}" ] else
          attrErrors where (removeAttrs own [ "keys" ])
          ++ (if !(i ? system) then [ "${where}: attribute system: missing (name one of the hive's systems)" ] else [ ])
          ++ (if own ? keys then keysErrors where own.keys else [ ]);

      refErrors = where: attr: v: urlOK:
        if v == null then [ ]
        else if !isString v then [ "${where}: attribute ${attr}: expected an instance name${if urlOK then " or a Nix store URL" else ""}, got ${describe v}" ]
        else if urlOK && isURL v then [ ]
        else if merged ? ${v} then [ ]
        else [ "${where}: attribute ${attr}: unknown instance \"${v}\"${refHint v (attrNames merged)}${if urlOK then " (a store may also be a Nix store URL such as ssh-ng://host or https://cache)" else ""}" ];

      # Follow a chain (jump or store) from an instance; report a cycle once,
      # from the instance whose name sorts first in it.
      chainOf = attr: start:
        let
          step = seen: cur:
            let next = if merged ? ${cur} && isAttrs merged.${cur} then merged.${cur}.${attr} or null else null; in
            if next == null || !isString next || !(merged ? ${next}) then { cycle = false; path = seen; }
            else if elem next seen then { cycle = true; path = seen ++ [ next ]; }
            else step (seen ++ [ next ]) next;
        in step [ start ] start;

      cycleErrors = attr: name:
        let c = chainOf attr name; in
        if c.cycle && head c.path == builtins.elemAt c.path (length c.path - 1)
          && head (sort builtins.lessThan (tail c.path)) == name
        then [ "instance \"${name}\": attribute ${attr}: cycle ${concatStringsSep " -> " c.path}" ]
        else [ ];


      # Values of the wrong type are replaced by their defaults here (the
      # errors above report them), so the inventory always has one shape.
      typed = pred: default: v: if pred v then v else default;
      isRef = v: v == null || isString v;
      instances = mapAttrs (name: i: {
        inherit name;
        system = typed isString null (i.system or null);
        # Several addresses are tried in order; the first that answers wins.
        hosts = let h = i.host or name; in if isString h then [ h ] else if isStringList h && h != [ ] then h else [ name ];
        host = let h = i.host or name; in if isString h then h else if isStringList h && h != [ ] then head h else name;
        user = typed isString "root" (i.user or "root");
        port = typed isInt 22 (i.port or 22);
        jump = typed isRef null (i.jump or null);
        store = typed isRef null (i.store or null);
        tags = typed isStringList [ ] (i.tags or [ ]);
        specialisation = typed isString null (i.specialisation or null);
        hostKeys = typed isStringList [ ] (normalizeHostKeys (i.hostKey or null));
        ssh = typed isSSHOpts { } (i.ssh or { });
        meta = typed isAttrs { } (i.meta or { });
        # The login consumers use to substitute from this instance when it
        # is their store (NixOS's nix.sshServe serves as "nix-ssh").
        storeUser = typed isString (typed isString "root" (i.user or "root")) (i.storeUser or (i.user or "root"));
        keys = mapAttrs keyInfo (keysOf name i);
      }) (filter' isAttrs merged);

      filter' = pred: set: listToAttrs (map (n: { name = n; value = set.${n}; }) (filter (n: pred set.${n}) (attrNames set)));

      # Two instances that reach the same address the same way must agree on
      # its host key, or one of them is lying about which machine it is.
      addrErrors =
        let
          keyed = filter (i: i.hostKeys != [ ]) (attrValues instances);
          groups = groupBy (i: "${if i.jump == null then "" else i.jump + "/"}${i.host}:${toString i.port}") keyed;
          bad = filter (g: length g > 1 && builtins.any (i: sort builtins.lessThan i.hostKeys != sort builtins.lessThan (head g).hostKeys) g) (attrValues groups);
        in map (g: "instances ${concatStringsSep ", " (map (i: "\"${i.name}\"") g)}: attribute hostKey: the same address ${(head g).host}:${toString (head g).port} is given different host keys") bad;

      errors = topErrors
        ++ defaultsErrors
        ++ (if isAttrs defaults && defaults ? keys then keysErrors "defaults" defaults.keys else [ ])
        ++ concatMap (n: systemErrors n systemsIn.${n}) (if systemsOK then attrNames systemsIn else [ ])
        ++ concatMap (n: instanceErrors n merged.${n}) (attrNames merged)
        ++ concatMap (cycleErrors "jump") (attrNames instances)
        ++ concatMap (cycleErrors "store") (attrNames instances)
        ++ addrErrors;

      # The public key may be given inline or as a file (a public key in the
      # store is harmless); nix-hive also reads keys/hive.pub beside the
      # secret key when neither is set.
      publicKey = signing.publicKey or (if signing ? publicKeyFile
        then builtins.replaceStrings [ "\n" ] [ "" ] (builtins.readFile signing.publicKeyFile)
        else null);

      # Added to every modules/configuration system. When the system imports
      # nixosModules.default (lib/module.nix), it learns its keys' metadata
      # (defaults' and the system's keys; an instance's own keys are not in
      # a closure its system shares), so their units are declared there.
      # Trusting the hive key and using a store stay opt-in through it.
      hiveModule = name: { options ? { }, ... }: {
        config = if options ? nix-hive && options.nix-hive ? keys then {
          nix-hive.keys = mapAttrs (n: k: removeAttrs (keyInfo n k) [ "name" "source" "file" "command" "timeout" ])
            (filter' isAttrs ((if isAttrs (defaults.keys or null) then defaults.keys else { })
              // (if isAttrs (systemsIn.${name}.keys or null) then systemsIn.${name}.keys else { })));
        } else { };
      };

      inventory = {
        inherit instances systems errors;
        signing = {
          keyFile = if signing ? keyFile then pathString signing.keyFile else null;
          inherit publicKey;
        };
        paths = mapAttrs (_: pathString) hivePaths;
        build.flags = hive.nix.build.flags or [ ];
        build.host = let h = hive.nix.build.host or null; in if isString h then h else null;
        # Host certificates signed by these keys are accepted for any
        # instance without a pinned hostKey, as @cert-authority lines in
        # known_hosts would be.
        hostCAs = let v = normalizeHostKeys (hive.hostCA or null); in if isStringList v then v else [ ];
      };
    in {
      inherit inventory;
      # The text keys' values, by instance, evaluated only when uploaded
      # (with the eval cache off, so they are written nowhere).
      keyTexts = mapAttrs (name: i: mapAttrs (_: k: k.text) (filter' (k: k ? text && isString k.text) (keysOf name i))) (filter' isAttrs merged);
      # One toplevel per system, evaluated only when asked for.
      toplevels = if systemsOK then mapAttrs toplevelOf (filter' isAttrs systemsIn) else { };
      # What building a system builds: its toplevel and its profiles'
      # packages, evaluated only when asked for.
      builds = if systemsOK then mapAttrs (name: s: {
        toplevel = toplevelOf name s;
        profiles = mapAttrs (_: p: p.path or null) (profilesOf s);
      }) (filter' isAttrs systemsIn) else { };
      configs = if systemsOK then mapAttrs configOf (filter' isAttrs systemsIn) else { };
      # What `nix-hive eval -E` applies its expression to: the normalized
      # hive, and nixpkgs' lib when the hive names nixpkgs (hive.nixpkgs, a
      # flake with lib, or paths.nixpkgs), else builtins.
      evalArgs = {
        hive = inventory;
        lib = let n = hive.nixpkgs or hivePaths.nixpkgs or null; in
          if isAttrs n && n ? lib then n.lib
          else if n != null then import "${toString n}/lib"
          else builtins;
      };
    };

  # Used by the embedded, non-flake path: `hive.nix` is a file or directory.
  fromFile = file: mkHive (import file);

in {
  inherit mkHive fromFile helpers;
  nixosModule = ./module.nix;
}
