(function(){
  var steps=[].slice.call(document.querySelectorAll('section.step'));
  if(!steps.length)return;
  var cur=0, label=document.getElementById('steplabel');
  function idx(n){for(var i=0;i<steps.length;i++){if(steps[i].getAttribute('data-step')===String(n))return i;}return -1;}
  function show(i,scroll){
    i=Math.max(0,Math.min(steps.length-1,i));cur=i;
    steps.forEach(function(s,j){s.hidden=(j!==i);});
    var n=steps[i].getAttribute('data-step');
    if(label)label.textContent='step '+n+' ('+(i+1)+' of '+steps.length+')';
    document.querySelectorAll('.tok.cur').forEach(function(t){t.classList.remove('cur');});
    document.querySelectorAll('.tok[data-step="'+n+'"]').forEach(function(t){t.classList.add('cur');});
    if(history.replaceState)history.replaceState(null,'','#'+steps[i].id);
    if(scroll)document.getElementById('viewer').scrollIntoView({block:'start'});
  }
  document.addEventListener('keydown',function(e){
    if(e.altKey||e.ctrlKey||e.metaKey)return;
    var t=e.target&&e.target.tagName;if(t==='INPUT'||t==='TEXTAREA'||t==='SELECT')return;
    if(e.key==='ArrowRight'||e.key==='j'){show(cur+1);e.preventDefault();}
    else if(e.key==='ArrowLeft'||e.key==='k'){show(cur-1);e.preventDefault();}
    else if(e.key==='Home'){show(0);e.preventDefault();}
    else if(e.key==='End'){show(steps.length-1);e.preventDefault();}
  });
  document.addEventListener('click',function(e){
    var a=e.target.closest('[data-go]');
    if(a){e.preventDefault();var g=a.getAttribute('data-go');show(g==='first'?0:g==='last'?steps.length-1:cur+parseInt(g,10));return;}
    var tok=e.target.closest('[data-step]');
    if(tok&&!tok.matches('section.step')){var i=idx(tok.getAttribute('data-step'));if(i>=0){e.preventDefault();show(i,true);}}
  });
  var h=location.hash.match(/^#step-(\d+)$/);var start=h?idx(h[1]):-1;
  show(start>=0?start:0,start>=0);
})();
