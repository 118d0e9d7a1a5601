import sys, pandas as pd
rows=[]; sect={}
for line in open(sys.argv[1]):
    tree, i, rest = line.split(' ',2)
    if rest.startswith('Engine.start'): sect[(tree,i)]='prefill'; continue
    if rest.startswith('decode starts'): sect[(tree,i)]='decode'; continue
    if not rest.startswith('| ') or '---' in rest or 'prompts' in rest or 'sequences' in rest: continue
    cells=[c.strip() for c in rest.strip().strip('|').split('|')]
    rows.append((sect[(tree,i)], tree, int(i), *cells))
pf=pd.DataFrame([r for r in rows if r[0]=='prefill'], columns=['s','tree','i','prompts','tokens','ids_l','ids_a','host','layout','vlayout','start','vstart'])
dc=pd.DataFrame([r for r in rows if r[0]=='decode'], columns=['s','tree','i','seqs','built','carried','ratio'])
for c in ['layout','vlayout','start','vstart']: pf[c]=pf[c].astype(float)
dc['built']=dc['built'].astype(float)
g=pf.groupby(['prompts','tree'])[['layout','vlayout','start','vstart']].median().unstack('tree')
d=dc.groupby(['seqs','tree']).built.median().unstack('tree')
out=[]
for p in sorted(pf.prompts.unique(), key=int):
    r=g.loc[p]; f=lambda c: f"{r[c,'wt_old']:.0f} -> {r[c,'main']:.0f} ({r[c,'main']/r[c,'wt_old']:.2f}x)"
    out.append({'prompts or sequences':int(p),'layout us':f('layout'),'varlen layout us':f('vlayout'),'varlen start us':f('vstart'),
        'decode start, built on the host us':f"{d.loc[p,'wt_old']:.0f} -> {d.loc[p,'main']:.0f} ({d.loc[p,'main']/d.loc[p,'wt_old']:.2f}x)"})
from sim.results import markdown
print(markdown(pd.DataFrame(out)))
