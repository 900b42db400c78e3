(function(){
  var box=document.getElementById('filter'),bad=document.getElementById('only-failed');
  if(!box)return;
  function apply(){
    var q=box.value.trim().toLowerCase(),only=bad.checked;
    document.querySelectorAll('details.prompt').forEach(function(sec){
      var shown=0,text=(sec.getAttribute('data-text')||'').toLowerCase();
      sec.querySelectorAll('.card').forEach(function(card){
        var hit=(!q||text.indexOf(q)>=0||card.getAttribute('data-key').toLowerCase().indexOf(q)>=0)&&
                (!only||card.getAttribute('data-failed')==='1');
        card.classList.toggle('hidden',!hit);if(hit)shown++;
      });
      sec.classList.toggle('hidden',shown===0);
      if((q||only)&&shown)sec.open=true;
    });
  }
  box.addEventListener('input',apply);bad.addEventListener('change',apply);
})();
