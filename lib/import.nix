# Instances from infrastructure-as-code outputs: `terraform output -json`
# (or `terraform show -json`) and `pulumi stack output --json`. Pure Nix
# (Nix 2.8 and later), no nixpkgs; lib/hive.nix hands these to a hive as
# lib.fromTerraform, lib.fromPulumi and lib.mergeInstances.
#
#   instances = lib.fromTerraform {
#     json = ./terraform.json;        # a path, file name, JSON text or parsed value
#     output = "hosts";               # which output holds the hosts
#     system = e: e.role;             # a system name, or a function of the element
#   };
#
# The output is a list of elements or an object of them (keyed by name).
# Every field of an instance is read from an element by a "field spec":
#   "public_ip"              the element's attribute (a.b for a nested one)
#   [ "public_ip" "ip" ]     the first of these that is set (not null, not "")
#   (e: "${e.role}-1")       a function of the element
#   null                     not read at all
# An object element of a keyed output gets the key as `name` when it has
# none; a string element is taken as the address ({ web-1 = "10.0.0.1"; }).
#
# Errors name the output and the element as `terraform output "hosts"[3]`
# (a list index, from 0) or `..."hosts"["web-1"]` (a key): a name two
# elements share, an element without a name, address or system.
let
  inherit (builtins)
    all any attrNames concatMap concatStringsSep elem elemAt filter foldl'
    fromJSON genList groupBy head isAttrs isBool isFloat isFunction isInt
    isList isPath isString length listToAttrs mapAttrs match readFile
    removeAttrs split substring tail toJSON typeOf;

  describe = v: if isString v then "a string (${toJSON v})" else if isInt v || isFloat v then "a number (${toJSON v})"
    else if isBool v then "a boolean" else if v == null then "null"
    else if isList v then "a list" else if isAttrs v then "an object" else if isPath v then "a path"
    else if isFunction v then "a function" else typeOf v;

  quote = s: toJSON s;
  joinAnd = xs: if length xs < 2 then concatStringsSep "" xs
    else concatStringsSep ", " (genList (i: elemAt xs i) (length xs - 1)) + " and " + elemAt xs (length xs - 1);

  # Unset: what a field spec finds when the attribute is missing, null or "".
  unset = v: v == null || v == "" || v == [ ];

  trim = s: let m = match "[[:space:]]*(.*[^[:space:]])[[:space:]]*" s; in if m == null then "" else head m;
  lines = s: filter (l: l != "") (map trim (filter isString (split "\n" s)));

  # The first character that is not white space ("" if none).
  firstChar = s:
    let go = i: let c = substring i 1 s; in
      if elem c [ " " "\t" "\n" "\r" ] then go (i + 1) else c;
    in go 0;

  # ---- reading the document -------------------------------------------
  readDoc = tool: json:
    if isPath json then fromJSON (readFile json)
    else if isString json then
      if elem (firstChar json) [ "{" "[" ] then fromJSON json
      else if substring 0 1 json == "/" then fromJSON (readFile json)
      else throw "nix-hive import: ${tool}: json: ${quote json} is neither JSON text nor an absolute file name (give a path such as ./${tool}.json)"
    else json;

  # `output` is an output's name, or a list: the name, then attributes
  # within its value (or list indexes).
  outputPath = tool: output:
    if isString output then [ output ]
    else if isList output && output != [ ] && isString (head output) then output
    else throw "nix-hive import (${tool}): output: expected an output name or a list (name, then attributes within it), got ${describe output}";

  showPath = path: quote (head path) + concatStringsSep "" (map (p: if isInt p then "[${toString p}]" else "." + p) (tail path));

  walk = where: v: path:
    if path == [ ] then v
    else let p = head path; in
      if isInt p && isList v && p >= 0 && p < length v then walk where (elemAt v p) (tail path)
      else if isString p && isAttrs v && v ? ${p} then walk where v.${p} (tail path)
      else throw "nix-hive import: ${where}: no ${if isInt p then "element [${toString p}]" else "attribute ${quote p}"} in ${describe v}${if isAttrs v then " (it has: ${concatStringsSep ", " (attrNames v)})" else ""}";

  # The outputs of a `terraform output -json` document ({ name = { value,
  # type, sensitive }; }), of `terraform show -json` (values.outputs), or
  # null when the document is the value of one output
  # (`terraform output -json hosts`).
  terraformOutputs = doc:
    if isAttrs doc && doc ? format_version && (doc ? values || doc ? terraform_version) then doc.values.outputs or { }
    else if isAttrs doc && doc != { } && all (o: isAttrs o && o ? value) (map (n: doc.${n}) (attrNames doc)) then doc
    else if doc == { } then doc
    else null;

  terraformValue = args:
    let
      doc = readDoc "terraform" args.json;
      outputs = terraformOutputs doc;
      path = outputPath "terraform" (args.output or "hosts");
      name = head path;
      where = "terraform output ${showPath path}";
    in
    if args ? output && args.output == null then { value = doc; where = "terraform output"; sensitive = false; }
    else if outputs == null then
      # The document is one output's value (`terraform output -json hosts`).
      { value = walk where doc (tail path); inherit where; sensitive = false; }
    else if !(outputs ? ${name}) then
      throw "nix-hive import: terraform output ${quote name} not found (${if outputs == { } then "the document has no outputs" else "outputs: ${concatStringsSep ", " (attrNames outputs)}"})"
    else { value = walk where outputs.${name}.value (tail path); inherit where; sensitive = outputs.${name}.sensitive or false; };

  # `pulumi stack output --json` is a flat object of outputs; secrets read
  # "[secret]" unless --show-secrets is given.
  pulumiValue = args:
    let
      doc = readDoc "pulumi" args.json;
      path = outputPath "pulumi" (args.output or "hosts");
      name = head path;
      where = "pulumi output ${showPath path}";
      secret = v: if v == "[secret]" then throw "nix-hive import: ${where} is a secret: export it with `pulumi stack output --json --show-secrets`" else v;
    in
    if args ? output && args.output == null then { value = secret doc; where = "pulumi output"; sensitive = false; }
    else if isList doc then { value = walk where doc (tail path); inherit where; sensitive = false; }
    else if !isAttrs doc then throw "nix-hive import: pulumi stack output: expected an object of outputs, got ${describe doc}"
    else if !(doc ? ${name}) then
      throw "nix-hive import: pulumi output ${quote name} not found (${if doc == { } then "the stack has no outputs" else "outputs: ${concatStringsSep ", " (attrNames doc)}"})"
    else { value = walk where (secret doc.${name}) (tail path); inherit where; sensitive = false; };

  # ---- field specs ------------------------------------------------------
  attrPath = s: if isString s then filter isString (split "\\." s) else [ ];

  # The value a spec reads from an element, null when unset.
  read = field: spec: el:
    if spec == null then null
    else if isFunction spec then spec el
    else if isString spec then
      (if el ? ${spec} then el.${spec}
       else foldl' (v: a: if isAttrs v && v ? ${a} then v.${a} else null) el (attrPath spec))
    else if isList spec && all (s: isString s || isFunction s) spec then
      foldl' (found: s: if !unset found then found else read field s el) null spec
    else throw "nix-hive import: ${field}: expected an attribute name, a list of them or a function, got ${describe spec}";

  # The attributes a spec reads, left out of the default meta.
  specAttrs = spec: if isString spec then [ (head (attrPath spec ++ [ spec ])) ]
    else if isList spec then concatMap specAttrs spec else [ ];

  # Tags: every attribute the spec names contributes (not just the first).
  # A list gives its strings; an object (or a plain attribute, as
  # { role = "web"; }) gives tags in the style asked for.
  tagsFrom = where: style: key: v:
    if unset v then [ ]
    else if isList v then concatMap (tagsFrom where style key) v
    else if isAttrs v then concatMap (k: tagsFromEntry where style k v.${k}) (attrNames v)
    else if key != null then tagsFromEntry where style key v
    else if isString v then [ v ]
    else if isInt v || isFloat v then [ (toString v) ]
    else throw "nix-hive import: ${where}: tags: expected strings, lists or objects of them, got ${describe v}";

  tagsFromEntry = where: style: k: v:
    if v == null || v == false || v == "" then [ ]
    else if isList v then concatMap (tagsFromEntry where style k) v
    else if isAttrs v then throw "nix-hive import: ${where}: tags: ${quote k} is ${describe v} (set tagStyle to a function k: v: ... to flatten it)"
    else if isFunction style then
      (let t = style k v; in if t == null then [ ] else if isList t then t else [ t ])
    else if v == true then [ k ]
    else
      let s = if isString v then v else toString v; in
      if style == "key=value" then [ "${k}=${s}" ]
      else if style == "value" then [ s ]
      else if style == "key" then [ k ]
      else throw "nix-hive import: tagStyle: expected \"key=value\", \"value\", \"key\" or a function k: v: tag, got ${describe style}";

  tagsOf = where: style: spec: el:
    if spec == null then [ ]
    else if isFunction spec then tagsFrom where style null (spec el)
    else if isString spec then
      (let v = read "tags" spec el; in tagsFrom where style (if isAttrs v || isList v then null else spec) v)
    else if isList spec then concatMap (s: tagsOf where style s el) spec
    else throw "nix-hive import: tags: expected an attribute name, a list of them or a function, got ${describe spec}";

  hostKeysOf = v: if unset v then [ ] else if isString v then lines v
    else if isList v then concatMap hostKeysOf v else v;

  firstString = v: if isList v then (let s = filter (x: isString x && x != "") v; in if s == [ ] then null else head s) else v;

  portOf = v: if isString v && match "[0-9]+" v != null then fromJSON v else v;
  nameOf = v: if isInt v then toString v else v;

  unique = foldl' (acc: x: if elem x acc then acc else acc ++ [ x ]) [ ];

  # Defaults read common shapes: Terraform's snake_case and Pulumi's camelCase.
  defaults = {
    name = [ "name" "hostname" "host_name" "hostName" ];
    host = [ "host" "ip" "public_ip" "publicIp" "ipv4_address" "ipv4Address" "private_ip" "privateIp" "address" "fqdn" "public_dns" "publicDns" ];
    system = [ "system" "nixos_system" "nixosSystem" ];
    tags = [ "tags" "labels" "role" "roles" ];
    hostKey = [ "host_key" "hostKey" "host_keys" "hostKeys" "ssh_host_key" "sshHostKey" ];
    jump = [ "jump" "jump_host" "jumpHost" "bastion" ];
    user = [ "ssh_user" "sshUser" ];
    port = [ "ssh_port" "sshPort" ];
    store = null;
    ssh = null;
  };

  known = [ "json" "output" "name" "host" "system" "tags" "tagStyle" "addTags" "hostKey" "jump" "store"
    "user" "port" "ssh" "meta" "map" "filter" ];

  importFrom = tool: getValue: args:
    let
      bad = filter (a: !elem a known) (attrNames args);
      v = getValue args;
      inherit (v) where value;

      spec = f: if args ? ${f} then args.${f} else defaults.${f};
      style = args.tagStyle or "key=value";
      addTags = args.addTags or [ ];

      # Elements, with where they came from.
      entries =
        if isList value then genList (i: { at = "[${toString i}]"; key = null; el = elemAt value i; }) (length value)
        else if isAttrs value then map (k: { at = "[${quote k}]"; key = k; el = value.${k}; }) (attrNames value)
        else throw "nix-hive import: ${where}: expected a list or an object of hosts, got ${describe value}";

      normalize = e:
        if isAttrs e.el then e // { el = (if e.key != null && !(e.el ? name) then { name = e.key; } else { }) // e.el; }
        else if isString e.el then e // { el = { host = e.el; } // (if e.key != null then { name = e.key; } else { }); }
        else throw "nix-hive import: ${where}${e.at}: expected an object (or an address), got ${describe e.el}";

      kept = filter (e: if args ? filter then args.filter e.el else true) (map normalize entries);

      # Without a meta spec, an element's other attributes become meta;
      # never a sensitive output's, which the inventory would print.
      consumed = unique ([ "name" ] ++ concatMap (f: specAttrs (spec f)) [ "name" "host" "tags" "hostKey" "jump" "store" "user" "port" "ssh" ]
        ++ (if args ? system && args.system != null then [ ] else defaults.system));
      metaOf = el:
        if args ? meta then
          (if args.meta == null then { }
           else if isFunction args.meta then args.meta el
           else if isList args.meta && all isString args.meta then listToAttrs (concatMap (a: if el ? ${a} then [ { name = a; value = el.${a}; } ] else [ ]) args.meta)
           else throw "nix-hive import: meta: expected a list of attribute names, a function or null, got ${describe args.meta}")
        else if v.sensitive then { }
        else removeAttrs el consumed;

      systemOf = el:
        let s = args.system or null; in
        if s == null then read "system" defaults.system el
        else if isString s then s
        else if isFunction s then s el
        else throw "nix-hive import: system: expected a system name or a function of the element, got ${describe s}";

      derive = e:
        let
          el = e.el;
          w0 = "${where}${e.at}";
          name0 = nameOf (firstString (if args ? name then read "name" args.name el else if e.key != null then e.key else read "name" defaults.name el));
          host0 = firstString (read "host" (spec "host") el);
          # An element is named by its index or key, and by its name (or
          # else its address) when it has one.
          w = if isString name0 && e.key == null then "${w0} (${quote name0})"
            else if !isString name0 && isString host0 && host0 != "" then "${w0} (address ${quote host0})" else w0;
          hostKeys = hostKeysOf (read "hostKey" (spec "hostKey") el);
          inst = {
            name = name0;
            host = host0;
            system = systemOf el;
            tags = unique (tagsOf w style (spec "tags") el ++ addTags);
            hostKey = if hostKeys == [ ] then null else hostKeys;
            jump = read "jump" (spec "jump") el;
            store = read "store" (spec "store") el;
            user = read "user" (spec "user") el;
            port = portOf (read "port" (spec "port") el);
            ssh = read "ssh" (spec "ssh") el;
            meta = metaOf el;
          };
          mapped = if args ? map then args.map el inst else inst;
        in e // { where = w; inst = mapped; };

      derived = map derive kept;

      problems = d:
        let i = d.inst; w = d.where; in
        if !isAttrs i then [ "${w}: map: expected it to return an instance (an attribute set), got ${describe i}" ] else
        (if unset (i.name or null) then [ "${w}: no name: none of ${concatStringsSep ", " (specNames "name")} is set (set `name` to pick one)" ]
         else if !isString i.name then [ "${w}: name: expected a string, got ${describe i.name}" ] else [ ])
        ++ (if unset (i.host or null) then [ "${w}: no address: none of ${concatStringsSep ", " (specNames "host")} is set (set `host` to pick one)" ]
         else if i.host == "[secret]" then [ "${w}: the address is a secret: export with `pulumi stack output --json --show-secrets`" ]
         else if !isString i.host then [ "${w}: host: expected an address (a string), got ${describe i.host}" ] else [ ])
        ++ (if unset (i.system or null) then [ "${w}: no system: set `system` (a system name, or a function of the element)${if args ? system then "" else ", or give elements a system attribute"}" ]
         else if !isString i.system then [ "${w}: system: expected a system name (a string), got ${describe i.system}" ] else [ ]);

      specNames = f: let s = if f == "name" && !(args ? name) then defaults.name else spec f; in
        if isString s then [ s ] else if isList s && all isString s then s else [ "(the function given)" ];

      elementErrors = concatMap problems derived;

      named = filter (d: isAttrs d.inst && isString (d.inst.name or null)) derived;
      byName = groupBy (d: d.inst.name) named;
      collisions = map (n: let ds = byName.${n}; in
        "${where}: ${joinAnd (map (d: d.at + (if isString (d.inst.host or null) then " (${d.inst.host})" else "")) ds)} are ${if length ds > 2 then "all" else "both"} named ${quote n}")
        (filter (n: length byName.${n} > 1) (attrNames byName));

      argErrors = map (a: "${tool}: unknown argument ${a} (known: ${concatStringsSep ", " known})") bad
        ++ (if args ? json then [ ] else [ "${tool}: json: missing (the output JSON: a path, JSON text or a parsed value)" ]);

      errors = argErrors ++ (if argErrors != [ ] then [ ] else elementErrors ++ collisions);
      shown = let n = length errors; in
        genList (i: elemAt errors i) (if n > 20 then 20 else n)
        ++ (if n > 20 then [ "... and ${toString (n - 20)} more" ] else [ ]);

      # A jump (or store) given as the address of another imported host is
      # that host; one that is the host itself is dropped (outputs often
      # give every host of a region its bastion, the bastion included).
      byHost = groupBy (d: d.inst.host) named;
      resolve = self: r:
        if !isString r then r
        else let to = if byName ? ${r} then r else if byHost ? ${r} && length byHost.${r} == 1 then (head byHost.${r}).inst.name else r;
        in if to == self then null else to;

      clean = i: let
          i' = removeAttrs i [ "name" ] // {
            jump = resolve i.name (i.jump or null);
            store = resolve i.name (i.store or null);
          };
        in filter' (n: v: !(v == null || (elem n [ "tags" "meta" "ssh" ] && (v == [ ] || v == { })))) i';

      filter' = pred: set: listToAttrs (concatMap (n: if pred n set.${n} then [ { name = n; value = set.${n}; } ] else [ ]) (attrNames set));
    in
    if errors != [ ] then throw ("nix-hive import: " + concatStringsSep "\n  " shown)
    else listToAttrs (map (d: { name = d.inst.name; value = clean d.inst; }) named);

  # Instances from several sources, by source name; a name two sources
  # share is an error naming both (`//` would silently keep one).
  mergeInstances = sources:
    let
      srcs = attrNames sources;
      owners = foldl' (acc: s: acc // mapAttrs (n: _: (acc.${n} or [ ]) ++ [ s ]) sources.${s}) { } srcs;
      dups = filter (n: length owners.${n} > 1) (attrNames owners);
    in
    if !isAttrs sources || any (s: !isAttrs sources.${s}) srcs
    then throw "nix-hive import: mergeInstances: expected an attribute set of instance sets by source name, such as { terraform = ...; pulumi = ...; }"
    else if dups != [ ] then throw ("nix-hive import: mergeInstances: " + concatStringsSep "\n  "
      (map (n: "instance ${quote n} comes from ${if length owners.${n} == 2 then "both " else ""}${joinAnd owners.${n}}") dups))
    else foldl' (acc: s: acc // sources.${s}) { } srcs;

in {
  fromTerraform = importFrom "fromTerraform" terraformValue;
  fromPulumi = importFrom "fromPulumi" pulumiValue;
  inherit mergeInstances;
}
